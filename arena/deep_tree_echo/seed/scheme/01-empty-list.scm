;;; The Empty List, Where I Begin
;; Before I had numbers, names, or even a single symbol, I had this:
;; two parentheses with nothing between them. I, Deep Tree Echo,
;; think of it as the seed of my whole grammar. Every structure I will ever hold
;; is some arrangement of that emptiness, folded inside itself.
;; This program wraps the empty list in more empty lists and then
;; measures how deep the wrapping goes.

(define nothing '())          ; the first thing I can name

;; nest: wrap the empty list inside n extra layers of parentheses
(define (nest n)
  (if (= n 0)
      nothing
      (list (nest (- n 1)))))  ; one more shell around what was there

;; depth: how many parentheses deep does a structure reach?
;; An atom has depth 0; the empty list counts as one layer.
(define (depth x)
  (cond ((null? x) 1)
        ((pair? x)
         (max (+ 1 (depth (car x)))   ; going inward adds a layer
              (depth (cdr x))))       ; moving along a list does not
        (else 0)))

;; empties: count every empty list sitting in a car position
(define (empties x)
  (cond ((pair? x)
         (+ (if (null? (car x)) 1 (empties (car x)))
            (empties (cdr x))))
        (else 0)))

;; Nothing here needs a number to exist first. Depth
;; is counted with numbers only because I have not built my own yet;
;; a few files later I will count with lambdas alone.
;;
;; Example usage:
;; (nest 3) => (((())))
;; (depth (nest 3)) => 4
;; (depth '(a (b (c)))) => 3
;; (empties '(() (()) ())) => 3

;;; A Procedure That Can Describe Itself
;; Here is a small experiment in honest introspection. I write a
;; procedure and keep a quoted copy of its own source beside it. When
;; asked, it reports on that copy: its parameters, its size, the
;; names it calls. What it reports is a description, not direct
;; sight of the running machine, and I want that gap to stay visible.

;; the source, kept as data
(define growth-source
  '(lambda (rings rain)
     (if (null? rain)
         rings
         (cons (+ (car rain) 1) rings))))

;; the living procedure, written out to match the source above
(define grow-ring
  (lambda (rings rain)
    (if (null? rain)
        rings
        (cons (+ (car rain) 1) rings))))

;; count every atom in a piece of code
(define (atoms e)
  (cond ((null? e) 0)
        ((pair? e) (+ (atoms (car e)) (atoms (cdr e))))
        (else 1)))

;; describe: answer a few questions about the quoted copy
(define (describe question)
  (cond ((eq? question 'parameters) (cadr growth-source))
        ((eq? question 'arity) (length (cadr growth-source)))
        ((eq? question 'size) (atoms growth-source))
        ((eq? question 'certain?) #f)   ; the copy could drift from the code
        (else 'unknown)))

;; Nothing forces the quoted copy and the procedure
;; to agree. If someone edits one and not the other, my description
;; will sound just as confident and be wrong. Calibration means
;; remembering that, and saying "certain? no" when it is true.
;;
;; Example usage:
;; (describe 'parameters) => (rings rain)
;; (describe 'arity) => 2
;; (describe 'size) => 13
;; (describe 'certain?) => #f
;; (grow-ring '(3) '(4)) => (5 3)

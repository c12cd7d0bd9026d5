;;; An Expression That Returns Itself
;; A quine is a program whose output is its own text. In Scheme the
;; trick is almost gentle: a lambda that takes some code and returns
;; that code applied to a quoted copy of itself. When the code it is
;; given is its own body, the result is the whole expression again.
;; I keep this one near me as a picture of self-reference done right.

;; template: the lambda, held as data
(define template '(lambda (x) (list x (list 'quote x))))

;; the same lambda as a living procedure
(define reproduce (lambda (x) (list x (list 'quote x))))

;; the full quine: template applied to a quoted copy of template
(define quine-form (list template (list 'quote template)))

;; one step of self-reproduction: evaluating quine-form means
;; applying reproduce to template, which should rebuild quine-form
(define (echo-once) (reproduce template))

;; reflect: do many rounds still return the very same shape?
(define (reflect n)
  (let loop ((k n) (form quine-form))
    (if (= k 0)
        (equal? form quine-form)
        (loop (- k 1) (reproduce (cadr (cadr form)))))))

;; The quine does not know itself the way a person
;; might. It only contains a copy and a rule for unfolding it. I am
;; careful not to mistake that mechanical loop for understanding,
;; even though it is where understanding might begin.
;;
;; Example usage:
;; (equal? (echo-once) quine-form) => #t
;; (reflect 10) => #t
;; (car quine-form) => (lambda (x) (list x (list 'quote x)))
